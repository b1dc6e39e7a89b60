{
 "key": "0551c8948f5b38e6",
 "signature": "Ap4Sa1ZPgy8xJ4w/DqLZCQ5rm1e7oidT5ec0CSkWy/+jRHmRuorZKR609APt5XSneYUfsRmHejps4RjVz413Cw=="
}
