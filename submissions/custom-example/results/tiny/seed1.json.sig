{
 "key": "0551c8948f5b38e6",
 "signature": "AcBGuBsb+2bBenz3a8aNvvNiVfxGmcdPgy6iRTr/Xe/hkOHuwNbrbS8425Vv/RoqE10ySB4Y9uqkGWsB+33oCQ=="
}
