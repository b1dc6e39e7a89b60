{
 "key": "228cf2f92d6bc34c",
 "signature": "DcwiLbcljfRzCgSsaMewBmWhZzZHwYunfpPXSHvDRXVPNw76sSiFn5oPEWQZaREs84b2KMHeN7Zoiq6Q8IJFAg=="
}
