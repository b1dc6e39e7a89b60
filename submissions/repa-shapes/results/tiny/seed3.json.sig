{
 "key": "0551c8948f5b38e6",
 "signature": "GMJC6XRAFCP7WkAscDx9ZfLupLnECM1Ha64/dWRoVhrAoxo00PjbLN2x8Ltn+SQw6AOigwRJayxBEB8/YcRRDg=="
}
