{
 "key": "228cf2f92d6bc34c",
 "signature": "cTtuXuHqP6A2ryLa+EN0j02CA6ljfIRECQBM5h8HrXoeAhZgPK1R7hRO2FL2quJjuqWOM1DSrgz/puaYymlnCw=="
}
