{
 "key": "0551c8948f5b38e6",
 "signature": "vEeXzdRlefwYjRviqCk2nYP9upKEMqo91ZdS130GgWe9mC4Yh0Akp/goKmcYgUU4TXDyqV86Kp4WGAYSm6/6AA=="
}
