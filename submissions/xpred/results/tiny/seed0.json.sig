{
 "key": "8c406635d5fd3ff6",
 "signature": "do5v8xwVdMbksh85T1heECKQIui1nl/p6dnAGNAeB11HCbK0NdmQz4cBfmjmOakLku+wxqV7wus6UgF6LYx0Cw=="
}
