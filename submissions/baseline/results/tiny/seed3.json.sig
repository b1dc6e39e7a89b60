{
 "key": "228cf2f92d6bc34c",
 "signature": "JdLmcPFYgVQUBhoLbupPAiurfCUsmF29whW9XNbLqBX6TbEaJqBsgjOyffiGZmtmF64nEqX2EGtwnTI/C9hgBg=="
}
