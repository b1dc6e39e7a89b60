{
 "key": "8c406635d5fd3ff6",
 "signature": "r4IZnrW8XhF/p36BSPcnhX/i2aNBKCryhqS04qzPLbGdcEleC1CrRkRlh3F+QxyWuhUxFvy2hCnT5SWkz3JbCA=="
}
