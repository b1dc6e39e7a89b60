{
 "key": "0551c8948f5b38e6",
 "signature": "oi/R/m6LLT9tpsiqC9vFNX3s9hsHuyLi5vOBFMkhg39LuLgxxSu08Saw9ButO2+NU93DHFuRLyM/TF3/sXO+Cg=="
}
