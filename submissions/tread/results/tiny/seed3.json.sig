{
 "key": "0551c8948f5b38e6",
 "signature": "98ei9amXixo4hjC9Iabe+q31v6gXAuYpkpPvq4dqhQDAKclZRammK6aTWvb2nLTWmZxG/dykzKVeyU+QF08yCg=="
}
