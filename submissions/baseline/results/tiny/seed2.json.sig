{
 "key": "0551c8948f5b38e6",
 "signature": "nSW5ISqLjp1i9RHfENEGiGi1iDKsesizU4wSTXVcoZwgQWhcB4G7Wu7xSSFs+GEgE1stR/oHbqqtgXczIKEFDw=="
}
