{
 "key": "228cf2f92d6bc34c",
 "signature": "DAvbSBNv9PBCij6D1cAbtq/wZg3LUkttrWARtScol+ktGyB1U3AScpTCbnvjtBkSRTyDrtCNWJpDwzXjyPEMDg=="
}
