{
 "key": "0551c8948f5b38e6",
 "signature": "aDhwDpO1iPntnMpmoBJrRpU+UG4XJsMtigK4ZCIRpwsF9Jh0YlpkDKuooCwURWr0NCForgQYquhqrTo7CGEPBg=="
}
