{
 "key": "228cf2f92d6bc34c",
 "signature": "4Xe1vjawn2yerfib16S41ZQOzqNA91rDsH2ZkqPMQbQwaDgaX7lZ4x6J2ooJQgcNSiVY0lAfytV6mvxu4j1yDA=="
}
