{
 "key": "228cf2f92d6bc34c",
 "signature": "hi3PcMSZWmw4K9uibr7xeXKVxvsZ47ecyw1VgmqxEVH4YAdADS1Kc9EVidHKby/mASPkQBaLVKpxqlPru5p2Aw=="
}
