{
 "key": "228cf2f92d6bc34c",
 "signature": "0UcStitvBzTcoKaK/RiPh7fiSlbbbvuTPEFrmY/dX6zZeCLYk1kcVUxZaUoDMv7E1RYlKlxPWPWzN2BYFGk2DA=="
}
