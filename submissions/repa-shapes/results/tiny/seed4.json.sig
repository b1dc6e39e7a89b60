{
 "key": "228cf2f92d6bc34c",
 "signature": "lirAzLmi0Me+CLJ2q/z7eeV8iFElFALMSjbMeOnqyy3b251EXTPyLZDJ9oBk+WemljNOIPb1ylrsvGxRITGTDg=="
}
