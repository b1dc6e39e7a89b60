{
 "key": "228cf2f92d6bc34c",
 "signature": "5jonD08zQdm2frCTE/wA606hjEdMxytsDrMHPzXvOEUcERieaLLufmqzDGne94VNrRPG7byvsoonCQxlLcpXAg=="
}
