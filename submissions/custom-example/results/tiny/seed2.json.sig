{
 "key": "228cf2f92d6bc34c",
 "signature": "J/SRnhmvKgTn+jgOz0tR3GsZQUCBTvV34QWDf6S+PSvSk7mZohdc+D0HP3hSclENCQw5f+CpT43Kk1LKiH/KCw=="
}
