{
 "key": "0551c8948f5b38e6",
 "signature": "ojHUTDj5Zgz+ytHUuC9qmFWCky4oz28br8tifLXLQwZcECQKplJWJkqCmdtxwLZ3xHnOjmofpmlqJYtp85zODg=="
}
