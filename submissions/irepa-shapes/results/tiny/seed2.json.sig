{
 "key": "228cf2f92d6bc34c",
 "signature": "o73qfpe7u+BMXdxd6JXVaYTbrn4TOsUZ75Y2faBLLNF80iN1R3pK9gcnH0PeWrdp6auq4rLaacVVB37e0+rVAA=="
}
