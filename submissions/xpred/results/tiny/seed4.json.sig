{
 "key": "0551c8948f5b38e6",
 "signature": "FfZXfkDjvwNhOhC7P7/QHNAq5yoSTcXDx+ZOyrDfzH5rhH8ogwiz2GJ120OClAOq8CDdvQjp4WxzzBVcjCO0Dw=="
}
