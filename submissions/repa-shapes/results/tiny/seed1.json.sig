{
 "key": "228cf2f92d6bc34c",
 "signature": "hCFiJrBcg709XXj6CBTJrfl0UzTw4dhjvTrk9sIo5aXByv+b9TiUx0/NjYfR5dQdedxtJWYml6ZWSgd2iPKZCw=="
}
