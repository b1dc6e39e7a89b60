{
 "key": "0551c8948f5b38e6",
 "signature": "1qtoiXPZZzynn1RbslXUDPuleo+fjGj+h+oXBC3eTLxkwZW6MnH6WC/1NUv9qgAMCHjWdXeulayTCWqxDb/ABg=="
}
