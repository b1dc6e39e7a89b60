{
 "key": "0551c8948f5b38e6",
 "signature": "RzBycQYl4Hm/drE9Y/kfyFBrOvMkld6wsWZGpYEPCpf+GcG/ffbp4xhN8GQwM8fTmuya5w2QYJg/TUtP+A9jDw=="
}
