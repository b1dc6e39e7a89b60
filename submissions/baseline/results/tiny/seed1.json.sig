{
 "key": "228cf2f92d6bc34c",
 "signature": "zrJcgRr5vT6ffKLp05FXMuQQybJ9Y8S1v8GqnweXAbx4YcBWktkv9vI6T1IlxsPze2W+eiewO1QJNWnEPyNxAw=="
}
