{
 "key": "228cf2f92d6bc34c",
 "signature": "M365UehMwm+UjNtseKkQm4VkewL5XH0bsUfTea14w3romuxoMNJslSAVsqH6SChxax5ZTO/ysUeCw3FFcdPEBg=="
}
