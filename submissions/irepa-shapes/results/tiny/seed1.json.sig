{
 "key": "228cf2f92d6bc34c",
 "signature": "fm/li5H1gy2Eu1MkOt9ZwNeHJOtUCzzMeRJVSgaWhWJIRfcEmJ9Y0gr714nIU2itGSaBcEYHetCPXnXsf6FRAQ=="
}
