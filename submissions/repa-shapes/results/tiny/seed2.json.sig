{
 "key": "228cf2f92d6bc34c",
 "signature": "36wHd9Mh740Ckc5n3C8VeZfp2d4sa+zBINdexv1tVq7bKxZfxds62s/W1DBfRWJDtua3zpGSf9uJuG7QrcshBQ=="
}
