{
 "key": "228cf2f92d6bc34c",
 "signature": "OcLKFOfzo/H154OpJxdz/DYhBFWf/l8eIkVsragqeKLkSCPf/ApC+wl3t7pzH0v65qHyq2y3Ph8ziAfDFPloAQ=="
}
