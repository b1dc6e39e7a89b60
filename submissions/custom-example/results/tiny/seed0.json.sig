{
 "key": "228cf2f92d6bc34c",
 "signature": "diFkBLdkhnRzSpXs3HBdvqLNF6L+qoeZpCgXF6nsJQ+WHGqMBXFf78zHEZpF1nPshLpcwuYh2jDJ8lOZfrQtAw=="
}
