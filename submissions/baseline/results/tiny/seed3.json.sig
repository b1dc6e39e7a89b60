{
 "key": "228cf2f92d6bc34c",
 "signature": "WHT19+y8MVpPlNK6OQRhbIbDKEVIajKIhh0QajhMXuUkeQ2e5IPGI6tE7giiGRCTYpmBnTatR6KVwWq71pQ5DA=="
}
