{
 "key": "228cf2f92d6bc34c",
 "signature": "83xVx6fMpS1n3Y+2CB54i7HBdSybGzKZ3jLYIuu6k70ZTrUb0Q4r3M+FDJ/YdrPRaUHRKlzAz6YpaEkOcoZZDQ=="
}
