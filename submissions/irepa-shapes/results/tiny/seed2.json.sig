{
 "key": "0551c8948f5b38e6",
 "signature": "d0MCVwXvqqIWJRT6mAksNAmaa1RRHQJJegOdpySAjk8yQ8KpoEtFRYoOP8r6389C2RkqVyvxK7eT5AuqpwV3CA=="
}
