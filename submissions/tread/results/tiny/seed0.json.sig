{
 "key": "228cf2f92d6bc34c",
 "signature": "4Yb6/FSyQMqGGgkkKARdnGmY9PSxJ2jZAh3r90x10+2jl50gxwOPRu2N+ECLEFlHCQJ2S9aMb0DJaEZbv4qLDA=="
}
