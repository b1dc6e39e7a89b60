{
 "key": "228cf2f92d6bc34c",
 "signature": "WBAk6uPeEcu6IToCOn+wIQZvHVpFdll4N3Whh1vecbQa8yQkrt9zxpqjUcb9/U0+D2ahd27/7jvLuMR2NuR/Cg=="
}
