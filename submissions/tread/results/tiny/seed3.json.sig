{
 "key": "228cf2f92d6bc34c",
 "signature": "O1csvO4U4F6zUx6RDX3w2GIK5Z4rrTEGMR4EH3v/47j/cU05NUAkULU38Q+kt+AabTWhqW/vcWHcjwd5/Z9pCA=="
}
