{
 "key": "228cf2f92d6bc34c",
 "signature": "82uAZIRW3lq/afZESPXyMNNSqSYDn4lSX79A/h59h5Ln1BhZc4yYUAcMPsIXwR2qfZ/EEY2REtJxr2Zlk2tnBA=="
}
