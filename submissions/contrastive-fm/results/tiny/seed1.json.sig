{
 "key": "0551c8948f5b38e6",
 "signature": "nnaOYXqJX8ykWzZSeO333U2yi33mP/ta0S8BRPiKW2vEccLrtSPCGnDu7G/HAyF6th3CvHZtWhhQqB58jhtQBQ=="
}
