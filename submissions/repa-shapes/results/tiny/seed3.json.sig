{
 "key": "228cf2f92d6bc34c",
 "signature": "aSePk6SZ8Pr3AsFNFL/qJ5nFU22nr31o0kFRh1QWWhWZh0bVcTkkvzP+CcIAo6fzHzOFOtaXKFXF42/1z0MeAg=="
}
