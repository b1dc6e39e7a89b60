{
 "key": "228cf2f92d6bc34c",
 "signature": "WXQ5Svs8Z3lfEGTm7KA8TECG57ElFDGPXrNi1akuWquv8h8ZPA0twj+WlKWUmByYGzgaOO6GFiI13pWnevA0Cw=="
}
