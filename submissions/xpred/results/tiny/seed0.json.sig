{
 "key": "228cf2f92d6bc34c",
 "signature": "R1/AutCScxlCTf4kqc4/SOcvpWsEzqVoE1it7gj/DR89kQ3Mf4LIn9eUwJzvC1mZmqAq92IfY5EXhnuVUyODCQ=="
}
