{
 "key": "228cf2f92d6bc34c",
 "signature": "JF6USRdrzsAFrCMlsrnwEAFixS60qVXacnfgSi//lPAx+NJ1kwPGNQD0wAoCt4DxeHbVtIYkg8IRjOYlsYIBCA=="
}
