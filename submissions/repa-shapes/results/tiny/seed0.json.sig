{
 "key": "0551c8948f5b38e6",
 "signature": "f2RTJQ6puRtViVnMGmZabm9thKpYs544Y6tk9VeNMjKEYv2paOTXew1Nbm0jlXFR6I91Qnzq3uNPu9IUy9rcBA=="
}
