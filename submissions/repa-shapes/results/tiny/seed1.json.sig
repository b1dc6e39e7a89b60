{
 "key": "228cf2f92d6bc34c",
 "signature": "SEzDFKXfceL2oMoT0sIlYP+24MTttqXBX8WConMD7NmxSBW2fdT2Hg02QYc7ikIENydV7MRdZaG1XL6ydHjuBA=="
}
