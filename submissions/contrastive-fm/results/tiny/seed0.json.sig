{
 "key": "8c406635d5fd3ff6",
 "signature": "rhAi8UrONAVvG4zuIo5IZbMPdi4ikJ7zugl2yazCkePL5twe3iC4dETZ2uXAOnLd45/XB2w/4zin99T9FTf3Bw=="
}
