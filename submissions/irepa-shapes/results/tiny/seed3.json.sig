{
 "key": "0551c8948f5b38e6",
 "signature": "9/m/Saw93dg9N+37Hu7sVjrWKUTA9M/atchIwqDD4GXwUEEx7L+Yzq4wfUKeavJmhbmtj8QE/Nzn3ysBOo/iAg=="
}
