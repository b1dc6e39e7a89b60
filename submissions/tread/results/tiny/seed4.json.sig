{
 "key": "0551c8948f5b38e6",
 "signature": "xBv/aOiJLteseM62pFoR7vESWbM2bRXsRA76YsiEHB0lwLQi0KZmSx1uWfECqS0AAzxKLoRIVg66mEWw8s2gAQ=="
}
