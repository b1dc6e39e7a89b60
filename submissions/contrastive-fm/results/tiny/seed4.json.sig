{
 "key": "228cf2f92d6bc34c",
 "signature": "52iLxyz+Lxf35ms5o1kAmbj3r6KexEHqfdxctn/Ev2ZehjBo1BFXNTOOMIRUyER6QYnphObMe1ZP/c/kadUgAw=="
}
