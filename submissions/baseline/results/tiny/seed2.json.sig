{
 "key": "228cf2f92d6bc34c",
 "signature": "MWhtbD5FN5lHe0PdCUs2L8JTDV/qEKzWUHP4weXe+CFr9HPsZPNwWnR3M9ADxegAgzvcV78qIJXLCkHLxhSWAw=="
}
