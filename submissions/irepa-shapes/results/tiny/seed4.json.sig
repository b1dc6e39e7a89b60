{
 "key": "0551c8948f5b38e6",
 "signature": "7q2rk/4fEmCZm+0ILoX1WxiNnzCJRVwEHS8/dj0ofx4ikIHU/MhTL6ddFenWTzDmtsno23JYwJd6UdrVA1FtDA=="
}
