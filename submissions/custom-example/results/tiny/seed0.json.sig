{
 "key": "8c406635d5fd3ff6",
 "signature": "9VF3WVj0CUTYsspL/YJwjuY8DGI5gKBF93RbfPLuMoEyxm+jssa5+Uz0I9oasqmtezghxiiLNo3Ji+XOZQgaBw=="
}
