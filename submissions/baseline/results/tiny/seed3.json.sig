{
 "key": "8c406635d5fd3ff6",
 "signature": "bM59F4QKxD09m7LwnFTWYqzhD8xzlvHHaJ36/XhNtFkNZhso97bJfb7QhHcg7g5Bh+OLuGRXXwkxOcB/t8BRBg=="
}
