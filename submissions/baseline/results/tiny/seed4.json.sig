{
 "key": "0551c8948f5b38e6",
 "signature": "FEwKFgjigPnkdf1H5MHYEY4mj69I8k0J7qSinCl3YWmBArjkIKvJXmziTC8ivCAfCGBBAxMmvsJju9DKySuOCQ=="
}
