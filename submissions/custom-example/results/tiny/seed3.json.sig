{
 "key": "228cf2f92d6bc34c",
 "signature": "JXyk9xpY6/fH6njFkSkVQsbGgd0e2svZbl77gm0JJo1yRidyceJ9OVzUG7H0ml+0aZzna64ZC2EJUB/3D9zqBQ=="
}
